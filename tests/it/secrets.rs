//! Channel credentials encrypted at rest: what the database holds, plaintext rows
//! encrypted at start-up, key rotation with `converger secrets reencrypt`, and the
//! errors of a wrong key or of a value moved to another channel.

use std::process::Command;
use std::time::Duration;

use converger::Config;
use converger::domain::{ChannelId, Timestamp};
use converger::secrets::{Keyring, SecretKey};
use converger::store::{Sealer, Store, StoreError, StoreOptions};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::sink::Sink;
use crate::common::{
    Backend, JWT_SECRET, LOOPBACK, SECRET_KEY, TestApp, both_backends, eventually, expect_data,
    postgres_only, s,
};
use crate::delivery::{post, settled_delivery, verify_standard_webhook};

both_backends!(
    credentials_are_encrypted_at_rest,
    plaintext_rows_are_encrypted_at_start_up,
    keys_rotate_and_old_rows_are_reencrypted,
    a_wrong_key_is_refused_at_start_up_and_on_read,
    values_moved_to_another_channel_do_not_decrypt,
);
postgres_only!(postgres_without_a_key_keeps_plaintext_until_one_is_set);

const ACCESS_TOKEN: &str = "EAAG-meta-access-token-7f3a";
const APP_SECRET: &str = "meta-app-secret-91bd";
const VERIFY_TOKEN: &str = "meta-verify-token-52ce";
const URL_PASSWORD: &str = "url-password-c0ffee";
const HEADER_TOKEN: &str = "header-token-d00d";

/// Runs `$body` with `$pool` bound to the store's pool that may write, past the store.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Sqlite { writer: $pool, .. } => $body,
            Store::Postgres($pool, _) => $body,
        }
    };
}

/// A channel's stored `secret` and `config` (as text), read past the store.
async fn raw(store: &Store, id: &str) -> (String, String) {
    const SQL: &str = "SELECT secret, CAST(config AS TEXT) FROM channels WHERE id = $1";
    let id: ChannelId = id.parse().unwrap();
    on_pool!(store, |pool| sqlx::query_as(SQL)
        .bind(id)
        .fetch_one(pool)
        .await)
    .expect("read the channel row")
}

/// Writes a channel's stored `secret` and `config` as given, past the store.
async fn write_raw(store: &Store, id: &str, secret: &str, config: &Value) {
    const SQL: &str = "UPDATE channels SET secret = $2, config = $3 WHERE id = $1";
    let id: ChannelId = id.parse().unwrap();
    on_pool!(store, |pool| sqlx::query(SQL)
        .bind(id)
        .bind(secret)
        .bind(sqlx::types::Json(config))
        .execute(pool)
        .await
        .map(|_| ()))
    .expect("write the channel row");
}

/// The key id a stored value names.
fn key_id(stored: &str) -> &str {
    converger::secrets::key_id_of(stored).unwrap_or_else(|| panic!("not sealed: {stored}"))
}

fn id_of(key: &str) -> String {
    SecretKey::from_base64(key).unwrap().id().to_owned()
}

/// A configuration of another node on the app's database with these keys.
fn config_with(app: &TestApp, current: Option<&str>, previous: Option<&str>) -> Config {
    let mut config = Config::new(app.database_url.clone());
    config.jwt_secret = Some(JWT_SECRET.into());
    config.egress_allow = converger::access::parse_cidrs(LOOPBACK).unwrap();
    config.secret_key = current.map(str::to_owned);
    config.secret_key_previous = previous.map(str::to_owned);
    config
}

async fn meta_channel(app: &TestApp) -> Value {
    app.create_channel(
        "whatsapp_meta",
        json!({
            "phone_number_id": "4455667788",
            "access_token": ACCESS_TOKEN,
            "verify_token": VERIFY_TOKEN,
            "app_secret": APP_SECRET,
        }),
    )
    .await
}

/// A channel's secret as `GET /secret` reveals it on the server at `base`.
async fn revealed_secret(app: &TestApp, base: &str, id: &str) -> String {
    let resp = app
        .http
        .get(format!("{base}/api/v1/channels/{id}/secret"))
        .header("x-api-key", &app.api_key)
        .send()
        .await
        .unwrap();
    s(&expect_data(resp, StatusCode::OK).await, "secret").to_owned()
}

/// Another node in this process on the app's database, until dropped.
struct Server {
    base: String,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve(app: &TestApp, config: Config) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(converger::run(config, listener, shutdown.clone()));
    eventually(Duration::from_secs(20), "the node to be ready", || async {
        let r = app.http.get(format!("{base}/ready")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;
    Server { base, shutdown }
}

async fn credentials_are_encrypted_at_rest(backend: Backend) {
    let app = TestApp::start(backend).await;
    let meta = meta_channel(&app).await;
    let (secret, config) = raw(&app.store, s(&meta, "id")).await;
    assert!(secret.starts_with("enc:v1:"), "{secret}");
    assert_eq!(key_id(&secret), id_of(SECRET_KEY));
    assert!(!secret.contains(s(&meta, "secret")));
    for plaintext in [ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN] {
        assert!(
            !config.contains(plaintext),
            "{plaintext} stored in {config}"
        );
    }
    let stored: Value = serde_json::from_str(&config).unwrap();
    for field in ["access_token", "app_secret", "verify_token"] {
        assert!(
            s(&stored, field).starts_with("enc:v1:"),
            "{field}: {stored}"
        );
    }
    // The rest of the config stays readable in the database.
    assert_eq!(stored["phone_number_id"], "4455667788");
    assert_eq!(stored["api_version"], meta["config"]["api_version"]);

    // The API reads plaintext: masked in the config, revealed by GET /secret.
    let read = expect_data(
        app.req(Method::GET, &format!("/api/v1/channels/{}", s(&meta, "id")))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(read["config"]["access_token"], "********");
    assert_eq!(read["config"]["phone_number_id"], "4455667788");
    assert_eq!(
        revealed_secret(&app, &app.base, s(&meta, "id")).await,
        s(&meta, "secret")
    );
    let opened = app
        .store
        .get_channel(app.tenant_id, s(&meta, "id").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(opened.config["access_token"], ACCESS_TOKEN);
    assert_eq!(opened.secret, s(&meta, "secret"));

    // A webhook's URL password and credential headers are sealed too; deliveries use
    // the plaintext, signed with the plaintext secret.
    let sink = Sink::start().await;
    let url = sink
        .url
        .replace("http://", &format!("http://bot:{URL_PASSWORD}@"));
    let hook = app
        .create_channel(
            "webhook",
            json!({"url": format!("{url}/in"), "headers": {"X-Api-Key": HEADER_TOKEN, "X-Team": "support"}}),
        )
        .await;
    let (secret, config) = raw(&app.store, s(&hook, "id")).await;
    assert!(secret.starts_with("enc:v1:"));
    assert!(!config.contains(URL_PASSWORD) && !config.contains("header-token"));
    assert!(config.contains("support"), "{config}");
    let conv = app
        .create_conversation(s(&hook, "id"), Some("customer-1"))
        .await;
    let activity = post(&app, &conv, "sealed at rest").await;
    let delivery = settled_delivery(&app, s(&activity, "id")).await;
    assert_eq!(delivery["status"], "delivered", "{delivery}");
    let got = sink.received();
    let req = &got[0];
    assert_eq!(req.header("x-api-key"), HEADER_TOKEN);
    assert_eq!(req.path, "/in");
    assert!(verify_standard_webhook(
        s(&hook, "secret"),
        req.header("webhook-id"),
        req.header("webhook-timestamp"),
        req.header("webhook-signature"),
        &req.body,
    ));

    // A patch keeps the stored credentials sealed, the new one included.
    let patched = app
        .req(
            Method::PATCH,
            &format!("/api/v1/channels/{}", s(&meta, "id")),
        )
        .json(&json!({"config": {"access_token": "EAAG-rotated-token", "app_secret": "********"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let (_, config) = raw(&app.store, s(&meta, "id")).await;
    assert!(!config.contains("EAAG-rotated-token") && !config.contains(APP_SECRET));
    let opened = app
        .store
        .get_channel(app.tenant_id, s(&meta, "id").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(opened.config["access_token"], "EAAG-rotated-token");
    assert_eq!(opened.config["app_secret"], APP_SECRET);
}

async fn plaintext_rows_are_encrypted_at_start_up(backend: Backend) {
    let app = TestApp::start(backend).await;
    // A row as a release without encryption wrote it.
    const INSERT: &str = "INSERT INTO channels (id, tenant_id, name, type, secret, config, status, \
         inserted_at, updated_at) VALUES ($1, $2, 'legacy', 'whatsapp_meta', $3, $4, 'active', $5, $5)";
    let id = ChannelId::new();
    let secret = converger::auth::generate_channel_secret();
    let config = json!({
        "phone_number_id": "4455667788",
        "access_token": ACCESS_TOKEN,
        "verify_token": VERIFY_TOKEN,
        "app_secret": APP_SECRET,
        "api_base_url": "https://graph.facebook.com",
        "api_version": "v21.0",
        "allow_unsigned_inbound": false,
    });
    on_pool!(&app.store, |pool| sqlx::query(INSERT)
        .bind(id)
        .bind(app.tenant_id)
        .bind(&secret)
        .bind(sqlx::types::Json(&config))
        .bind(Timestamp::now())
        .execute(pool)
        .await
        .map(|_| ()))
    .expect("insert a plaintext row");
    let id = id.to_string();
    assert_eq!(raw(&app.store, &id).await.0, secret);
    // Served as it is before the start-up step ran.
    assert_eq!(revealed_secret(&app, &app.base, &id).await, secret);

    // The next start encrypts it, once.
    let restarted = config_with(&app, Some(SECRET_KEY), None);
    let store = converger::app::open_store(&restarted).await.unwrap();
    let (stored_secret, stored_config) = raw(&app.store, &id).await;
    assert_eq!(key_id(&stored_secret), id_of(SECRET_KEY));
    for plaintext in [ACCESS_TOKEN, APP_SECRET, VERIFY_TOKEN, secret.as_str()] {
        assert!(!stored_config.contains(plaintext) && !stored_secret.contains(plaintext));
    }
    assert_eq!(
        store
            .seal_channels(converger::store::Reseal::Plaintext)
            .await
            .unwrap(),
        0,
        "nothing is left in plaintext"
    );
    assert_eq!(raw(&app.store, &id).await.0, stored_secret);
    store.close().await;

    // And it still works, for the running server as for the store.
    assert_eq!(revealed_secret(&app, &app.base, &id).await, secret);
    let opened = app
        .store
        .get_channel(app.tenant_id, id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(opened.secret, secret);
    assert_eq!(opened.config, config);
}

async fn keys_rotate_and_old_rows_are_reencrypted(backend: Backend) {
    let app = TestApp::start(backend).await;
    let old = SECRET_KEY;
    let new = SecretKey::generate().to_base64();
    let first = meta_channel(&app).await;
    let id = s(&first, "id");

    // New key with the old one as previous: everything still reads; nothing is
    // rewritten by starting.
    let rotated = config_with(&app, Some(&new), Some(old));
    let node = serve(&app, rotated).await;
    assert_eq!(
        revealed_secret(&app, &node.base, id).await,
        s(&first, "secret")
    );
    assert_eq!(key_id(&raw(&app.store, id).await.0), id_of(old));
    // What the new node writes is sealed with the new key.
    let resp = app
        .http
        .post(format!("{}/api/v1/channels", node.base))
        .header("x-api-key", &app.api_key)
        .json(&json!({"name": "second", "type": "websocket", "config": {}}))
        .send()
        .await
        .unwrap();
    let second = expect_data(resp, StatusCode::CREATED).await;
    assert_eq!(
        key_id(&raw(&app.store, s(&second, "id")).await.0),
        id_of(&new)
    );
    drop(node);

    // `converger secrets reencrypt` rewrites the rows of the old key.
    let out = Command::new(env!("CARGO_BIN_EXE_converger"))
        .args(["secrets", "reencrypt"])
        .env("CONVERGER_DATABASE_URL", &app.database_url)
        .env("CONVERGER_JWT_SECRET", JWT_SECRET)
        .env("CONVERGER_SECRET_KEY", &new)
        .env("CONVERGER_SECRET_KEY_PREVIOUS", old)
        .env("RUST_LOG", "error")
        .output()
        .expect("run converger");
    let stdout = crate::cli::stdout(&out);
    assert_eq!(stdout.trim(), "re-encrypted 1 channels", "{stdout}");
    let (secret, config) = raw(&app.store, id).await;
    assert_eq!(key_id(&secret), id_of(&new));
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(key_id(s(&config, "access_token")), id_of(&new));

    // The new key alone now reads everything.
    let alone = config_with(&app, Some(&new), None);
    let node = serve(&app, alone.clone()).await;
    assert_eq!(
        revealed_secret(&app, &node.base, id).await,
        s(&first, "secret")
    );
    let store = converger::app::open_store(&alone).await.unwrap();
    let opened = store
        .get_channel(app.tenant_id, id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(opened.config["access_token"], ACCESS_TOKEN);
    store.close().await;
    // And the old one alone no longer does.
    let refused = converger::app::open_store(&config_with(&app, Some(old), None))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(format!("{refused:#}").contains(&id_of(&new)), "{refused:#}");
}

async fn a_wrong_key_is_refused_at_start_up_and_on_read(backend: Backend) {
    let app = TestApp::start(backend).await;
    let meta = meta_channel(&app).await;
    let wrong = SecretKey::generate();

    // At start-up: the node does not serve, and says which key it lacks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = config_with(&app, Some(&wrong.to_base64()), None);
    let ended = tokio::time::timeout(
        Duration::from_secs(20),
        converger::run(config, listener, CancellationToken::new()),
    )
    .await
    .expect("a node with the wrong key stops at once");
    let message = format!("{:#}", ended.unwrap_err());
    assert!(
        message.contains(s(&meta, "id"))
            && message.contains(&id_of(SECRET_KEY))
            && message
                .contains("neither CONVERGER_SECRET_KEY nor one of CONVERGER_SECRET_KEY_PREVIOUS"),
        "{message}"
    );
    // Without any key on PostgreSQL, or with a wrong one: an error too.
    if backend == Backend::Postgres {
        let refused = converger::app::open_store(&config_with(&app, None, None))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            format!("{refused:#}").contains("no CONVERGER_SECRET_KEY is configured"),
            "{refused:#}"
        );
    }

    // On read: an error naming the channel and field, never a wrong value.
    let store = Store::connect(&app.database_url, &StoreOptions::default())
        .await
        .unwrap()
        .with_sealer(Sealer::new(Keyring::new(Some(wrong), vec![]), |_, _| {
            Vec::new()
        }));
    let id: ChannelId = s(&meta, "id").parse().unwrap();
    match store.get_channel(app.tenant_id, id).await {
        Err(StoreError::Secret { channel, field, .. }) => {
            assert_eq!((channel, field.as_str()), (id, "secret"));
        }
        other => panic!("read with a wrong key: {other:?}"),
    }
    assert!(matches!(
        store.list_all_channels(None, None, 10).await,
        Err(StoreError::Secret { .. })
    ));
    store.close().await;
}

async fn values_moved_to_another_channel_do_not_decrypt(backend: Backend) {
    let app = TestApp::start(backend).await;
    let a = meta_channel(&app).await;
    let b = meta_channel(&app).await;
    let (a_id, b_id) = (s(&a, "id"), s(&b, "id"));
    let (a_secret, a_config) = raw(&app.store, a_id).await;
    let (b_secret, b_config) = raw(&app.store, b_id).await;
    let a_config: Value = serde_json::from_str(&a_config).unwrap();
    let mut b_config: Value = serde_json::from_str(&b_config).unwrap();

    // B's secret column given A's ciphertext.
    write_raw(&app.store, b_id, &a_secret, &b_config).await;
    let read = app
        .store
        .get_channel(app.tenant_id, b_id.parse().unwrap())
        .await;
    assert!(
        matches!(&read, Err(StoreError::Secret { field, .. }) if field == "secret"),
        "{read:?}"
    );
    assert!(
        read.unwrap_err()
            .to_string()
            .contains("altered or belongs elsewhere")
    );
    let resp = app
        .req(Method::GET, &format!("/api/v1/channels/{b_id}/secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);

    // B's access token given A's ciphertext of it; the secret put back.
    b_config["access_token"] = a_config["access_token"].clone();
    write_raw(&app.store, b_id, &b_secret, &b_config).await;
    let read = app
        .store
        .get_channel(app.tenant_id, b_id.parse().unwrap())
        .await;
    assert!(
        matches!(&read, Err(StoreError::Secret { field, .. }) if field == "config/access_token"),
        "{read:?}"
    );
    // Moved within a channel, from one field to another: refused as well.
    let mut moved = a_config.clone();
    moved["app_secret"] = a_config["access_token"].clone();
    write_raw(&app.store, a_id, &a_secret, &moved).await;
    let read = app
        .store
        .get_channel(app.tenant_id, a_id.parse().unwrap())
        .await;
    assert!(
        matches!(&read, Err(StoreError::Secret { field, .. }) if field == "config/app_secret"),
        "{read:?}"
    );
    // A node does not start over such rows.
    assert!(
        converger::app::open_store(&config_with(&app, Some(SECRET_KEY), None))
            .await
            .is_err()
    );
}

/// PostgreSQL without a key stores plaintext (and warns); once a key is set, the next
/// start encrypts what is there.
async fn postgres_without_a_key_keeps_plaintext_until_one_is_set(backend: Backend) {
    let app = TestApp::start_with(backend, |c| c.secret_key = None).await;
    let meta = meta_channel(&app).await;
    let (secret, config) = raw(&app.store, s(&meta, "id")).await;
    assert_eq!(secret, s(&meta, "secret"));
    assert!(config.contains(ACCESS_TOKEN));
    let store = converger::app::open_store(&config_with(&app, Some(SECRET_KEY), None))
        .await
        .unwrap();
    let (secret, config) = raw(&app.store, s(&meta, "id")).await;
    assert_eq!(key_id(&secret), id_of(SECRET_KEY));
    assert!(!config.contains(ACCESS_TOKEN));
    let opened = store
        .get_channel(app.tenant_id, s(&meta, "id").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(opened.secret, s(&meta, "secret"));
    store.close().await;
}

/// With SQLite and no key set, one is generated next to the database file, readable by
/// the owner only, and used from then on; setting a key later still reads what the
/// generated one encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_generates_a_key_and_keeps_it_next_to_the_database() {
    let app = TestApp::start_with(Backend::Sqlite, |c| c.secret_key = None).await;
    let path = app
        .database_url
        .strip_prefix("sqlite://")
        .map(|p| format!("{p}.secret-key"))
        .unwrap();
    let kept = std::fs::read_to_string(&path).expect("a generated key file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let meta = meta_channel(&app).await;
    let (secret, _) = raw(&app.store, s(&meta, "id")).await;
    assert_eq!(key_id(&secret), id_of(&kept));
    // Restarting keeps the same key.
    let store = converger::app::open_store(&config_with(&app, None, None))
        .await
        .unwrap();
    store.close().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), kept);
    // A configured key takes over; the kept one still opens its values.
    let node = serve(&app, config_with(&app, Some(SECRET_KEY), None)).await;
    assert_eq!(
        revealed_secret(&app, &node.base, s(&meta, "id")).await,
        s(&meta, "secret")
    );
}
