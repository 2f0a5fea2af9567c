//! Channel and client tokens: issuance, scope, expiry, tampering, inactive owners.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use converger::auth::{Claims, TokenType};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Backend, JWT_SECRET, TestApp, both_backends, expect_data, expect_error, s};

both_backends!(
    client_tokens_reach_one_conversation,
    bad_tokens_are_rejected,
    inactive_tenant_and_channel_are_rejected,
    live_client_tokens_are_refreshed,
);

async fn client_tokens_reach_one_conversation(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let other_conv = app.create_conversation(s(&ch, "id"), None).await;
    let other_ch = app.websocket_channel().await;
    let foreign = app.create_conversation(s(&other_ch, "id"), None).await;

    // Issued with the channel token for a conversation of that channel...
    let resp = app
        .anon(Method::POST, "/api/v1/tokens")
        .header("x-channel-token", s(&ch, "token"))
        .json(&json!({"conversation_id": s(&conv, "id"), "user_id": "u-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["expires_in"], 3600);
    let token = s(&body, "token").to_owned();
    // ...not for a conversation of another channel.
    let resp = app
        .anon(Method::POST, "/api/v1/tokens")
        .header("x-channel-token", s(&ch, "token"))
        .json(&json!({"conversation_id": s(&foreign, "id"), "user_id": "u-1"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    // The API key may issue for any conversation of the tenant.
    let resp = app
        .req(Method::POST, "/api/v1/tokens")
        .json(&json!({"conversation_id": s(&foreign, "id"), "user_id": "u-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // The client token reads and writes its conversation only.
    let own = format!("/api/v1/conversations/{}", s(&conv, "id"));
    expect_data(
        app.with_bearer(&token, Method::GET, &own)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    expect_data(
        app.with_bearer(&token, Method::GET, &format!("{own}/activities"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    for path in [
        format!("/api/v1/conversations/{}", s(&other_conv, "id")),
        format!("/api/v1/conversations/{}/activities", s(&other_conv, "id")),
    ] {
        expect_error(
            app.with_bearer(&token, Method::GET, &path)
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
    let resp = app
        .with_bearer(
            &token,
            Method::POST,
            &format!("/api/v1/conversations/{}/activities", s(&other_conv, "id")),
        )
        .json(&json!({"text": "sneaky"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    // And nothing that needs the API key or a channel token.
    for (method, path) in [
        (Method::GET, "/api/v1/channels".to_owned()),
        (Method::GET, "/api/v1/conversations".to_owned()),
        (Method::POST, format!("{own}/close")),
    ] {
        expect_error(
            app.with_bearer(&token, method, &path).send().await.unwrap(),
            StatusCode::FORBIDDEN,
            "api_key_required",
        )
        .await;
    }
    let resp = app
        .with_bearer(&token, Method::POST, "/api/v1/tokens")
        .json(&json!({"conversation_id": s(&conv, "id"), "user_id": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::FORBIDDEN, "insufficient_scope").await;
    let resp = app
        .with_bearer(&token, Method::POST, "/api/v1/conversations")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::FORBIDDEN, "insufficient_scope").await;
}

fn sign(claims: &Claims, alg: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

async fn bad_tokens_are_rejected(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let path = format!("/api/v1/conversations/{}", s(&conv, "id"));
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        typ: TokenType::Client,
        tenant: app.tenant_id,
        channel: s(&ch, "id").parse().unwrap(),
        conversation: Some(s(&conv, "id").parse().unwrap()),
        sub: Some("u".into()),
        sfp: None,
        iat: now,
        exp: Some(now + 600),
        jti: "j".into(),
    };
    let good = sign(&claims, Algorithm::HS256, JWT_SECRET.as_bytes());
    expect_data(
        app.with_bearer(&good, Method::GET, &path)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    let expired = sign(
        &Claims {
            iat: now - 7200,
            exp: Some(now - 3600),
            ..claims.clone()
        },
        Algorithm::HS256,
        JWT_SECRET.as_bytes(),
    );
    let not_yet = sign(
        &Claims {
            exp: None,
            ..claims.clone()
        },
        Algorithm::HS256,
        JWT_SECRET.as_bytes(),
    );
    let wrong_key = sign(
        &claims,
        Algorithm::HS256,
        b"another-secret-another-secret-0123",
    );
    let hs384 = sign(&claims, Algorithm::HS384, JWT_SECRET.as_bytes());
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = good.split('.').nth(1).unwrap();
    let alg_none = format!("{header}.{payload}.");
    let tampered = {
        let mut c = claims.clone();
        c.conversation = Some(converger::domain::ConversationId::new());
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let parts: Vec<&str> = good.split('.').collect();
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let channel_as_client = s(&ch, "token").to_owned();

    expect_error(
        app.with_bearer(&expired, Method::GET, &path)
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "token_expired",
    )
    .await;
    for (name, token) in [
        ("no exp", not_yet),
        ("wrong key", wrong_key),
        ("hs384", hs384),
        ("alg none", alg_none),
        ("tampered", tampered),
        ("garbage", "a.b.c".to_owned()),
    ] {
        let resp = app
            .with_bearer(&token, Method::GET, &path)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{name}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token", "{name}");
    }
    // A channel token sent as a bearer works as a channel token, not a client token.
    expect_data(
        app.with_bearer(&channel_as_client, Method::GET, &path)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    // A client token sent as a channel token does not.
    let resp = app
        .anon(Method::GET, &path)
        .header("x-channel-token", &good)
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

async fn inactive_tenant_and_channel_are_rejected(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let conv_id = s(&conv, "id");
    let client = app.jwt.issue_client_token(
        app.tenant_id,
        s(&ch, "id").parse().unwrap(),
        conv_id.parse().unwrap(),
        "u",
    );
    let path = format!("/api/v1/conversations/{conv_id}");

    // Inactive channel: its tokens stop, and the API key cannot post into it.
    app.req(Method::PATCH, &format!("/api/v1/channels/{}", s(&ch, "id")))
        .json(&json!({"status": "inactive"}))
        .send()
        .await
        .unwrap();
    expect_error(
        app.with_bearer(&client, Method::GET, &path)
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "channel_inactive",
    )
    .await;
    let resp = app
        .anon(Method::GET, &path)
        .header("x-channel-token", s(&ch, "token"))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::FORBIDDEN, "channel_inactive").await;
    expect_error(
        app.post_activity(conv_id, json!({"text": "x"})).await,
        StatusCode::FORBIDDEN,
        "channel_inactive",
    )
    .await;
    app.req(Method::PATCH, &format!("/api/v1/channels/{}", s(&ch, "id")))
        .json(&json!({"status": "active"}))
        .send()
        .await
        .unwrap();
    expect_data(
        app.with_bearer(&client, Method::GET, &path)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;

    // Inactive tenant: every credential stops at once.
    app.store
        .set_tenant_status(app.tenant_id, converger::domain::TenantStatus::Inactive)
        .await
        .unwrap();
    expect_error(
        app.req(Method::GET, &path).send().await.unwrap(),
        StatusCode::FORBIDDEN,
        "tenant_inactive",
    )
    .await;
    expect_error(
        app.with_bearer(&client, Method::GET, &path)
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "tenant_inactive",
    )
    .await;
    let resp = app
        .anon(Method::GET, &path)
        .header("x-channel-token", s(&ch, "token"))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::FORBIDDEN, "tenant_inactive").await;
    assert_eq!(app.activities_count_direct(conv_id).await, 0);
}

/// The claims of a token, read without checking it.
fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.with_bearer(token, Method::POST, "/api/v1/tokens/refresh")
        .send()
        .await
        .unwrap()
}

async fn live_client_tokens_are_refreshed(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let ch_id = s(&ch, "id");
    let conv = app.create_conversation(ch_id, None).await;
    let conv_id = s(&conv, "id");
    let resp = app
        .req(Method::POST, "/api/v1/tokens")
        .json(&json!({"conversation_id": conv_id, "user_id": "u-1"}))
        .send()
        .await
        .unwrap();
    let issued: serde_json::Value = expect_data(resp, StatusCode::CREATED).await;
    let first = s(&issued, "token").to_owned();

    // A new token for the same conversation and user, with an expiry of its own.
    let resp = refresh(&app, &first).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "bare {{token, expires_in}}: {body}"
    );
    let second = s(&body, "token").to_owned();
    assert_ne!(second, first);
    let (old, new) = (claims_of(&first), claims_of(&second));
    for claim in ["typ", "tenant", "channel", "conversation", "sub"] {
        assert_eq!(new[claim], old[claim], "{claim}");
    }
    assert_ne!(new["jti"], old["jti"]);
    assert!(new["exp"].as_i64() >= old["exp"].as_i64());
    // It works as the first did, and is refreshed in turn; the first still works until
    // it expires.
    let posted = app
        .with_bearer(
            &second,
            Method::POST,
            &format!("/api/v1/conversations/{conv_id}/activities"),
        )
        .json(&json!({"text": "still here"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_data(posted, StatusCode::CREATED).await["sender"],
        "u-1"
    );
    assert_eq!(refresh(&app, &second).await.status(), StatusCode::OK);
    assert_eq!(refresh(&app, &first).await.status(), StatusCode::OK);

    // An expired token is not refreshed, nor anything that is not a client token.
    let now = chrono::Utc::now().timestamp();
    let expired = sign(
        &Claims {
            typ: TokenType::Client,
            tenant: app.tenant_id,
            channel: ch_id.parse().unwrap(),
            conversation: Some(conv_id.parse().unwrap()),
            sub: Some("u-1".into()),
            sfp: None,
            iat: now - 7200,
            exp: Some(now - 3600),
            jti: "j".into(),
        },
        Algorithm::HS256,
        JWT_SECRET.as_bytes(),
    );
    expect_error(
        refresh(&app, &expired).await,
        StatusCode::UNAUTHORIZED,
        "token_expired",
    )
    .await;
    let mut forged = second.clone();
    forged.pop();
    expect_error(
        refresh(&app, &forged).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    expect_error(
        app.anon(Method::POST, "/api/v1/tokens/refresh")
            .send()
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    for credential in [app.api_key.as_str(), s(&ch, "token")] {
        expect_error(
            refresh(&app, credential).await,
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        )
        .await;
    }

    // Inactive channel or tenant: refused, as every use of the token is.
    app.req(Method::PATCH, &format!("/api/v1/channels/{ch_id}"))
        .json(&json!({"status": "inactive"}))
        .send()
        .await
        .unwrap();
    expect_error(
        refresh(&app, &second).await,
        StatusCode::FORBIDDEN,
        "channel_inactive",
    )
    .await;
    app.req(Method::PATCH, &format!("/api/v1/channels/{ch_id}"))
        .json(&json!({"status": "active"}))
        .send()
        .await
        .unwrap();
    app.store
        .set_tenant_status(app.tenant_id, converger::domain::TenantStatus::Inactive)
        .await
        .unwrap();
    expect_error(
        refresh(&app, &second).await,
        StatusCode::FORBIDDEN,
        "tenant_inactive",
    )
    .await;
    app.store
        .set_tenant_status(app.tenant_id, converger::domain::TenantStatus::Active)
        .await
        .unwrap();

    // A closed conversation takes no new tokens; reopened, it does again.
    let path = format!("/api/v1/conversations/{conv_id}");
    app.req(Method::POST, &format!("{path}/close"))
        .send()
        .await
        .unwrap();
    expect_error(
        refresh(&app, &second).await,
        StatusCode::CONFLICT,
        "conversation_closed",
    )
    .await;
    app.req(Method::POST, &format!("{path}/reopen"))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh(&app, &second).await.status(), StatusCode::OK);
}
