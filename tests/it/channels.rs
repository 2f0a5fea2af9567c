//! Channels: creation with adapter validation, masking, patching, secrets, listing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Backend, TestApp, both_backends, expect_data, expect_error, s};

both_backends!(
    create_returns_token_secret_and_defaults,
    every_type_validates_its_config,
    secrets_are_masked_and_survive_patches,
    secret_rotation_revokes_channel_tokens,
    list_filters_and_paginates,
    url_passwords_are_never_shown,
);

/// A webhook URL's user-info password is masked in API reads and admin pages, and
/// survives a patch that sends the masked URL back.
async fn url_passwords_are_never_shown(backend: Backend) {
    let app = TestApp::start(backend).await;
    let url = "https://bot:s3cret-pw@hooks.example.com/in";
    let created = app.create_channel("webhook", json!({"url": url})).await;
    let id = s(&created, "id");
    assert!(!created.to_string().contains("s3cret-pw"), "{created}");
    let read = expect_data(
        app.req(Method::GET, &format!("/api/v1/channels/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(!read.to_string().contains("s3cret-pw"), "{read}");
    assert!(
        s(&read["config"], "url").starts_with("https://bot:"),
        "{read}"
    );
    for page in [
        format!("/admin/channels/{id}"),
        "/admin/channels".to_owned(),
    ] {
        let html = app
            .anon(Method::GET, &page)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!html.contains("s3cret-pw"), "{page}");
    }
    // Sending back what was read keeps the stored password.
    expect_data(
        app.req(Method::PATCH, &format!("/api/v1/channels/{id}"))
            .json(&json!({"config": {"url": read["config"]["url"]}}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let stored = app
        .store
        .get_channel(app.tenant_id, id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.config["url"], url);
}

async fn create_returns_token_secret_and_defaults(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app
        .create_channel("webhook", json!({"url": "https://bot.example.com/hook"}))
        .await;
    assert_eq!(ch["type"], "webhook");
    assert_eq!(ch["status"], "active");
    assert!(s(&ch, "secret").starts_with("whsec_"));
    assert_eq!(s(&ch, "token").split('.').count(), 3);
    assert!(s(&ch, "inbound_url").ends_with(&format!("/api/v1/channels/{}/inbound", s(&ch, "id"))));
    assert_eq!(ch["config"]["method"], "POST");
    assert_eq!(ch["config"]["require_signature"], true);

    // Reads never show the secret; GET /secret does.
    let read = expect_data(
        app.req(Method::GET, &format!("/api/v1/channels/{}", s(&ch, "id")))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(read.get("secret").is_none());
    let secret = expect_data(
        app.req(
            Method::GET,
            &format!("/api/v1/channels/{}/secret", s(&ch, "id")),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(secret["secret"], ch["secret"]);
}

async fn every_type_validates_its_config(backend: Backend) {
    let app = TestApp::start(backend).await;
    let cases: &[(&str, Value, &[&str])] = &[
        ("webhook", json!({"url": "not a url"}), &["config.url"]),
        ("webhook", json!({}), &["config.url"]),
        (
            "webhook",
            json!({"url": "https://x.example", "method": "GET", "timeout_ms": 0}),
            &["config.method", "config.timeout_ms"],
        ),
        (
            "whatsapp_meta",
            json!({"access_token": "t", "verify_token": "v"}),
            &["config.phone_number_id"],
        ),
        (
            "whatsapp_meta",
            json!({"phone_number_id": "12", "access_token": "t", "verify_token": "v", "api_base_url": "graph"}),
            &["config.api_base_url"],
        ),
        (
            "whatsapp_infobip",
            json!({"base_url": "https://x.api.infobip.com", "api_key": "k"}),
            &["config.sender"],
        ),
        ("echo", json!({"prefix": 3}), &["config.prefix"]),
        (
            "websocket",
            json!({"url": "https://x.example"}),
            &["config.url"],
        ),
        ("websocket", json!("a string"), &["config"]),
    ];
    for (kind, config, fields) in cases {
        let resp = app
            .req(Method::POST, "/api/v1/channels")
            .json(&json!({"name": "c", "type": kind, "config": config}))
            .send()
            .await
            .unwrap();
        let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        let named: Vec<&str> = err["details"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert_eq!(named, *fields, "{kind} {config}");
    }
    // Blank name and unknown type.
    let resp = app
        .req(Method::POST, "/api/v1/channels")
        .json(&json!({"name": " ", "type": "webhook", "config": {"url": "ftp://x"}}))
        .send()
        .await
        .unwrap();
    let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(err["details"]["fields"].as_array().unwrap().len(), 2);
    let resp = app
        .req(Method::POST, "/api/v1/channels")
        .json(&json!({"name": "c", "type": "telegram"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    // Nothing was created by any of these.
    let list = expect_data(
        app.req(Method::GET, "/api/v1/channels")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(list, json!([]));
}

async fn secrets_are_masked_and_survive_patches(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app
        .create_channel(
            "whatsapp_meta",
            json!({"phone_number_id": "106540352242922", "access_token": "EAAG-real-token", "verify_token": "verify-me", "app_secret": "app-secret"}),
        )
        .await;
    for field in ["access_token", "verify_token", "app_secret"] {
        assert_eq!(ch["config"][field], "********", "{field} masked");
    }
    assert_eq!(ch["config"]["phone_number_id"], "106540352242922");
    let id = s(&ch, "id");

    // Send back what was read, with one change: the masked secrets are kept.
    let mut config = ch["config"].clone();
    config["api_version"] = json!("v19.0");
    let patched = expect_data(
        app.req(Method::PATCH, &format!("/api/v1/channels/{id}"))
            .json(&json!({"name": "WhatsApp DE", "config": config}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["name"], "WhatsApp DE");
    assert_eq!(patched["config"]["api_version"], "v19.0");
    let stored = app
        .store
        .get_channel(app.tenant_id, id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.config["access_token"], "EAAG-real-token");
    assert_eq!(stored.config["app_secret"], "app-secret");

    // A patch that breaks the config is refused and changes nothing.
    let resp = app
        .req(Method::PATCH, &format!("/api/v1/channels/{id}"))
        .json(&json!({"name": "renamed", "config": {"phone_number_id": null}}))
        .send()
        .await
        .unwrap();
    let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(
        err["details"]["fields"][0]["field"],
        "config.phone_number_id"
    );
    let stored = app
        .store
        .get_channel(app.tenant_id, id.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(stored.name, "WhatsApp DE");
}

async fn secret_rotation_revokes_channel_tokens(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let id = s(&ch, "id");
    let old_token = s(&ch, "token").to_owned();
    let with_token = |token: &str| {
        app.anon(Method::POST, "/api/v1/conversations")
            .header("x-channel-token", token)
            .json(&json!({}))
    };
    expect_data(
        with_token(&old_token).send().await.unwrap(),
        StatusCode::CREATED,
    )
    .await;
    // Reads return the same token for one secret, not a new credential each time.
    for _ in 0..2 {
        let read = expect_data(
            app.req(Method::GET, &format!("/api/v1/channels/{id}"))
                .send()
                .await
                .unwrap(),
            StatusCode::OK,
        )
        .await;
        assert_eq!(s(&read, "token"), old_token);
    }

    let rotated = expect_data(
        app.req(
            Method::POST,
            &format!("/api/v1/channels/{id}/rotate_secret"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_ne!(rotated["secret"], ch["secret"]);
    assert_ne!(s(&rotated, "token"), old_token);
    expect_error(
        with_token(&old_token).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    expect_data(
        with_token(s(&rotated, "token")).send().await.unwrap(),
        StatusCode::CREATED,
    )
    .await;
}

async fn list_filters_and_paginates(backend: Backend) {
    let app = TestApp::start(backend).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(s(&app.websocket_channel().await, "id").to_owned());
    }
    let hook = app
        .create_channel("webhook", json!({"url": "https://x.example/h"}))
        .await;

    let list = |query: String| {
        let app = &app;
        async move {
            let resp = app
                .req(Method::GET, &format!("/api/v1/channels{query}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()
        }
    };
    let only_ws = list("?type=websocket".into()).await;
    let got: Vec<&str> = only_ws["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| s(c, "id"))
        .collect();
    assert_eq!(got, ids);

    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = list(query.clone()).await;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| s(c, "id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let mut all = ids.clone();
    all.push(s(&hook, "id").to_owned());
    assert_eq!(seen, all);

    // Disabled channels can be filtered out.
    expect_data(
        app.req(Method::PATCH, &format!("/api/v1/channels/{}", ids[0]))
            .json(&json!({"status": "inactive"}))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let active = list("?status=active".into()).await;
    assert_eq!(active["data"].as_array().unwrap().len(), 3);
}
