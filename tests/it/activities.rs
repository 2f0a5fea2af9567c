//! Activities: creation through `ingest`, idempotency, listing, direction and sender
//! rules, and the delivery rows written with them.

use converger::domain::{ChannelId, RouteDirection};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Backend, TestApp, both_backends, expect_data, expect_error, s};

both_backends!(
    post_and_list_in_seq_order,
    idempotency_replays_and_conflicts,
    sender_and_direction_follow_the_credential,
    delivery_rows_follow_channels_and_routes,
);

async fn post_and_list_in_seq_order(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let id = s(&conv, "id");

    let created = expect_data(
        app.post_activity(
            id,
            json!({"text": "hello", "attachments": [{"url": "https://x.example/a.png", "type": "image/png"}], "metadata": {"k": "v"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["seq"], 1);
    assert_eq!(created["type"], "message");
    assert_eq!(created["direction"], "outbound");
    assert_eq!(created["sender"], "app");
    assert_eq!(created["conversation_id"], id);
    assert_eq!(created["tenant_id"], app.tenant_id.to_string());
    assert_eq!(created["idempotency_key"], Value::Null);
    for n in 2..=5 {
        let a = expect_data(
            app.post_activity(id, json!({"text": format!("m{n}")}))
                .await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(a["seq"], n);
    }
    let all = app.activities(id).await;
    assert_eq!(
        all.iter()
            .map(|a| a["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        all[0], created,
        "REST list and create return the same activity JSON"
    );

    // `after` as seq and as id, and pagination by cursor.
    let page = |query: String| {
        let app = &app;
        async move {
            let resp = app
                .req(
                    Method::GET,
                    &format!("/api/v1/conversations/{id}/activities{query}"),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()
        }
    };
    let after3 = page("?after=3".into()).await;
    assert_eq!(after3["data"].as_array().unwrap().len(), 2);
    let after_id = page(format!("?after={}", s(&all[3], "id"))).await;
    assert_eq!(after_id["data"][0]["seq"], 5);
    let first_two = page("?limit=2".into()).await;
    assert_eq!(first_two["next_cursor"], "2");
    let rest = page("?limit=2&after=2".into()).await;
    assert_eq!(rest["data"][0]["seq"], 3);
    let bad = app
        .req(
            Method::GET,
            &format!("/api/v1/conversations/{id}/activities?after=x"),
        )
        .send()
        .await
        .unwrap();
    expect_error(bad, StatusCode::BAD_REQUEST, "invalid_query").await;

    let conv_now = expect_data(
        app.req(Method::GET, &format!("/api/v1/conversations/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(conv_now["last_seq"], 5);
}

async fn idempotency_replays_and_conflicts(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), None).await;
    let id = s(&conv, "id");
    let post = |key: &'static str, text: &'static str| {
        app.req(
            Method::POST,
            &format!("/api/v1/conversations/{id}/activities"),
        )
        .header("x-idempotency-key", key)
        .json(&json!({"text": text}))
        .send()
    };
    let first = expect_data(post("k-1", "hi").await.unwrap(), StatusCode::CREATED).await;
    let replay = expect_data(post("k-1", "hi").await.unwrap(), StatusCode::OK).await;
    assert_eq!(replay, first);
    let err = expect_error(
        post("k-1", "changed").await.unwrap(),
        StatusCode::CONFLICT,
        "idempotency_conflict",
    )
    .await;
    assert_eq!(err["details"]["activity_id"], first["id"]);

    // The body field works like the header; both must agree when both are sent.
    let by_field = expect_data(
        app.post_activity(id, json!({"text": "hi", "idempotency_key": "k-1"}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_field["id"], first["id"]);
    let resp = app
        .req(
            Method::POST,
            &format!("/api/v1/conversations/{id}/activities"),
        )
        .header("x-idempotency-key", "a")
        .json(&json!({"text": "hi", "idempotency_key": "b"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    // Keys are per conversation; replays used no seq.
    let next = expect_data(post("k-2", "next").await.unwrap(), StatusCode::CREATED).await;
    assert_eq!(next["seq"], 2);
    let conv2 = app.create_conversation(s(&ch, "id"), None).await;
    let other = expect_data(
        app.req(
            Method::POST,
            &format!("/api/v1/conversations/{}/activities", s(&conv2, "id")),
        )
        .header("x-idempotency-key", "k-1")
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_ne!(other["id"], first["id"]);
    assert_eq!(app.activities(id).await.len(), 2);
}

async fn sender_and_direction_follow_the_credential(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ch = app.websocket_channel().await;
    let conv = app.create_conversation(s(&ch, "id"), Some("wa-4917")).await;
    let id = s(&conv, "id");
    let path = format!("/api/v1/conversations/{id}/activities");

    // API key: direction and sender as given.
    let a = expect_data(
        app.post_activity(
            id,
            json!({"text": "imported", "direction": "inbound", "sender": "wa-4917"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        (a["direction"].as_str(), a["sender"].as_str()),
        (Some("inbound"), Some("wa-4917"))
    );

    // Channel token: inbound, sender defaults to the conversation's external id.
    let a = expect_data(
        app.anon(Method::POST, &path)
            .header("x-channel-token", s(&ch, "token"))
            .json(&json!({"text": "from the channel"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        (a["direction"].as_str(), a["sender"].as_str()),
        (Some("inbound"), Some("wa-4917"))
    );
    let resp = app
        .anon(Method::POST, &path)
        .header("x-channel-token", s(&ch, "token"))
        .json(&json!({"text": "x", "direction": "outbound"}))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;

    // Client token: the token's user, whatever the body says.
    let token = app.jwt.issue_client_token(
        app.tenant_id,
        s(&ch, "id").parse().unwrap(),
        id.parse().unwrap(),
        "user-42",
    );
    let a = expect_data(
        app.with_bearer(&token, Method::POST, &path)
            .json(&json!({"text": "me", "sender": "someone-else"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        (a["direction"].as_str(), a["sender"].as_str()),
        (Some("inbound"), Some("user-42"))
    );
}

async fn delivery_rows_follow_channels_and_routes(backend: Backend) {
    // Rows as `ingest` writes them, before any worker touches them.
    let app = TestApp::start_with(backend, |c| c.delivery_enabled = false).await;
    let hook = app
        .create_channel("webhook", json!({"url": "https://bot.example.com/h"}))
        .await;
    let ws = app.websocket_channel().await;
    let echo = app.create_channel("echo", json!({})).await;
    let bot = app
        .create_channel("webhook", json!({"url": "https://bot.example.com/routed"}))
        .await;
    let hook_id = s(&hook, "id");

    let deliveries = |activity: Value| {
        let app = &app;
        async move {
            let resp = app
                .req(
                    Method::GET,
                    &format!("/api/v1/activities/{}/deliveries", s(&activity, "id")),
                )
                .send()
                .await
                .unwrap();
            let list = expect_data(resp, StatusCode::OK).await;
            list.as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    assert_eq!(d["status"], "pending");
                    assert_eq!(d["attempts"], 0);
                    assert_eq!(d["seq"], activity["seq"]);
                    s(d, "channel_id").to_owned()
                })
                .collect::<Vec<_>>()
        }
    };

    // A webhook channel delivers outbound activities of its conversations, not inbound
    // ones, and never typing.
    let conv = app.create_conversation(hook_id, None).await;
    let out = expect_data(
        app.post_activity(s(&conv, "id"), json!({"text": "reply"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(deliveries(out).await, [hook_id]);
    let inbound = expect_data(
        app.post_activity(
            s(&conv, "id"),
            json!({"text": "hi", "direction": "inbound", "sender": "u"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert!(deliveries(inbound).await.is_empty());
    let typing = expect_data(
        app.post_activity(s(&conv, "id"), json!({"type": "typing"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert!(deliveries(typing).await.is_empty());

    // Echo answers inbound messages only.
    let econv = app.create_conversation(s(&echo, "id"), None).await;
    let inbound = expect_data(
        app.post_activity(
            s(&econv, "id"),
            json!({"text": "ping", "direction": "inbound", "sender": "u"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(deliveries(inbound).await, [s(&echo, "id")]);

    // A route forwards what users write on the websocket channel to the bot.
    let ws_id: ChannelId = s(&ws, "id").parse().unwrap();
    let bot_id: ChannelId = s(&bot, "id").parse().unwrap();
    app.store
        .insert_route(app.tenant_id, ws_id, bot_id, RouteDirection::Inbound)
        .await
        .unwrap();
    let wconv = app.create_conversation(s(&ws, "id"), Some("visitor")).await;
    let from_user = expect_data(
        app.anon(
            Method::POST,
            &format!("/api/v1/conversations/{}/activities", s(&wconv, "id")),
        )
        .header("x-channel-token", s(&ws, "token"))
        .json(&json!({"text": "help"}))
        .send()
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(deliveries(from_user).await, [s(&bot, "id")]);
    let from_app = expect_data(
        app.post_activity(s(&wconv, "id"), json!({"text": "answer"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert!(
        deliveries(from_app).await.is_empty(),
        "the route filters inbound only"
    );

    // What arrives from a channel is not delivered back to it: a bot posting on its
    // own webhook channel gets no delivery, and a route on to a websocket channel adds
    // none either (websocket channels are served by PubSub). Another websocket channel
    // than `ws`: a route back to `ws` would close a cycle, which routes refuse.
    let ws_other: ChannelId = s(&app.websocket_channel().await, "id").parse().unwrap();
    app.store
        .insert_route(app.tenant_id, bot_id, ws_other, RouteDirection::Any)
        .await
        .unwrap();
    let bconv = app.create_conversation(s(&bot, "id"), None).await;
    let from_bot_channel = expect_data(
        app.anon(
            Method::POST,
            &format!("/api/v1/conversations/{}/activities", s(&bconv, "id")),
        )
        .header("x-channel-token", s(&bot, "token"))
        .json(&json!({"text": "x", "sender": "s"}))
        .send()
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert!(deliveries(from_bot_channel).await.is_empty());
    // Echo answers what arrives on its own channel: that delivery is its reply.
    let from_echo_channel = expect_data(
        app.anon(
            Method::POST,
            &format!("/api/v1/conversations/{}/activities", s(&econv, "id")),
        )
        .header("x-channel-token", s(&echo, "token"))
        .json(&json!({"text": "ping", "sender": "u"}))
        .send()
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(deliveries(from_echo_channel).await, [s(&echo, "id")]);
    // An inactive target gets nothing.
    app.req(
        Method::PATCH,
        &format!("/api/v1/channels/{}", s(&bot, "id")),
    )
    .json(&json!({"status": "inactive"}))
    .send()
    .await
    .unwrap();
    let later = expect_data(
        app.anon(
            Method::POST,
            &format!("/api/v1/conversations/{}/activities", s(&wconv, "id")),
        )
        .header("x-channel-token", s(&ws, "token"))
        .json(&json!({"text": "anyone?"}))
        .send()
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    assert!(deliveries(later).await.is_empty());
}
