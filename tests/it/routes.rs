//! Routing rules: CRUD, the rules a route must satisfy (same tenant, active channels,
//! no self-routes, no duplicates, no cycles), and the delivery rows routes produce.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Backend, TestApp, both_backends, expect_data, expect_error, s};

both_backends!(
    create_list_and_delete,
    invalid_routes_are_refused,
    cycles_are_refused,
    routes_from_the_api_produce_delivery_rows,
);

/// A webhook target nobody listens on: a delivery worker's attempts fail as retryable
/// and the rows stay pending, whatever the worker's timing.
const UNROUTABLE: &str = "http://127.0.0.1:9/";

async fn webhook(app: &TestApp) -> String {
    s(
        &app.create_channel("webhook", json!({ "url": UNROUTABLE }))
            .await,
        "id",
    )
    .to_owned()
}

async fn post_route(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.with_key(key, Method::POST, "/api/v1/routes")
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn create_route(app: &TestApp, source: &str, target: &str, direction: &str) -> Value {
    expect_data(
        post_route(
            app,
            &app.api_key,
            json!({"source_channel_id": source, "target_channel_id": target, "direction": direction}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await
}

async fn route_ids(app: &TestApp, query: &str) -> Vec<String> {
    let list = expect_data(
        app.req(Method::GET, &format!("/api/v1/routes{query}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| s(r, "id").to_owned())
        .collect()
}

async fn delete_route(app: &TestApp, id: &str) -> reqwest::Response {
    app.req(Method::DELETE, &format!("/api/v1/routes/{id}"))
        .send()
        .await
        .unwrap()
}

async fn create_list_and_delete(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ws = s(&app.websocket_channel().await, "id").to_owned();
    let bot = webhook(&app).await;
    let other_bot = webhook(&app).await;

    // The direction defaults to `any`.
    let route = expect_data(
        post_route(
            &app,
            &app.api_key,
            json!({"source_channel_id": ws, "target_channel_id": bot}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(route["source_channel_id"], ws.as_str());
    assert_eq!(route["target_channel_id"], bot.as_str());
    assert_eq!(route["direction"], "any");
    assert_eq!(route["tenant_id"], app.tenant_id.to_string());
    assert!(route["inserted_at"].is_string());
    let inbound = create_route(&app, ws.as_str(), &other_bot, "inbound").await;
    assert_eq!(inbound["direction"], "inbound");
    let from_bot = create_route(&app, &bot, &other_bot, "outbound").await;

    let (first, second, third) = (s(&route, "id"), s(&inbound, "id"), s(&from_bot, "id"));
    assert_eq!(route_ids(&app, "").await, [first, second, third]);
    assert_eq!(
        route_ids(&app, &format!("?source_channel_id={ws}")).await,
        [first, second]
    );
    assert_eq!(
        route_ids(&app, &format!("?source_channel_id={other_bot}")).await,
        Vec::<String>::new()
    );
    // Keyset pages, oldest first.
    let page: Value = app
        .req(Method::GET, "/api/v1/routes?limit=2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_cursor"], second);
    let rest = route_ids(&app, &format!("?limit=2&cursor={second}")).await;
    assert_eq!(rest, [third]);

    // Another tenant sees none of them and cannot delete them.
    let (_, key_b) = app.create_tenant("globex").await;
    let list_b = expect_data(
        app.with_key(&key_b, Method::GET, "/api/v1/routes")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(list_b, json!([]));
    let resp = app
        .with_key(&key_b, Method::DELETE, &format!("/api/v1/routes/{first}"))
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;

    let resp = delete_route(&app, first).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.bytes().await.unwrap().len(), 0);
    assert_eq!(route_ids(&app, "").await, [second, third]);
    expect_error(
        delete_route(&app, first).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        delete_route(&app, "not-a-uuid").await,
        StatusCode::BAD_REQUEST,
        "invalid_id",
    )
    .await;
    // Routes need the API key: a channel token is refused.
    let resp = app
        .anon(Method::GET, "/api/v1/routes")
        .header(
            "x-channel-token",
            s(&app.websocket_channel().await, "token"),
        )
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::FORBIDDEN, "api_key_required").await;
}

async fn invalid_routes_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let a = webhook(&app).await;
    let b = webhook(&app).await;
    let (_, key_b) = app.create_tenant("globex").await;
    let foreign = s(
        &app.create_channel_as(&key_b, "websocket", json!({})).await,
        "id",
    )
    .to_owned();
    let missing = uuid::Uuid::now_v7().to_string();

    // Another tenant's channel is as unknown as a missing one, on either end, whatever
    // else is wrong with the request.
    for (source, target) in [
        (&foreign, &a),
        (&a, &foreign),
        (&missing, &a),
        (&a, &missing),
        (&foreign, &foreign),
    ] {
        let resp = post_route(
            &app,
            &app.api_key,
            json!({"source_channel_id": source, "target_channel_id": target}),
        )
        .await;
        expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    // ...and the other tenant cannot route between our channels either.
    let resp = post_route(
        &app,
        &key_b,
        json!({"source_channel_id": a, "target_channel_id": b}),
    )
    .await;
    expect_error(resp, StatusCode::NOT_FOUND, "not_found").await;

    // A route to itself.
    let resp = post_route(
        &app,
        &app.api_key,
        json!({"source_channel_id": a, "target_channel_id": a}),
    )
    .await;
    let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    assert_eq!(err["details"]["fields"][0]["field"], "target_channel_id");

    // Inactive channels, named by field.
    let inactive = webhook(&app).await;
    let resp = app
        .req(Method::PATCH, &format!("/api/v1/channels/{inactive}"))
        .json(&json!({"status": "inactive"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for (source, target, field) in [
        (&a, &inactive, "target_channel_id"),
        (&inactive, &a, "source_channel_id"),
    ] {
        let resp = post_route(
            &app,
            &app.api_key,
            json!({"source_channel_id": source, "target_channel_id": target}),
        )
        .await;
        let err = expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
        let fields = err["details"]["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 1, "{err}");
        assert_eq!(fields[0]["field"], field);
    }

    // Malformed bodies.
    for body in [
        json!({"source_channel_id": a, "target_channel_id": b, "direction": "sideways"}),
        json!({"source_channel_id": a}),
        json!({"source_channel_id": a, "target_channel_id": "x"}),
        json!({"source_channel_id": a, "target_channel_id": b, "priority": 1}),
    ] {
        let resp = post_route(&app, &app.api_key, body).await;
        expect_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").await;
    }

    // A duplicate, whatever its direction.
    create_route(&app, &a, &b, "inbound").await;
    let resp = post_route(
        &app,
        &app.api_key,
        json!({"source_channel_id": a, "target_channel_id": b, "direction": "outbound"}),
    )
    .await;
    expect_error(resp, StatusCode::CONFLICT, "route_exists").await;

    // Only the one valid route was created.
    assert_eq!(route_ids(&app, "").await.len(), 1);
}

async fn cycles_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let a = webhook(&app).await;
    let b = webhook(&app).await;
    let c = webhook(&app).await;
    let refuse = |source: &str, target: &str, direction: &str| {
        let app = &app;
        let body = json!({"source_channel_id": source, "target_channel_id": target, "direction": direction});
        async move {
            let resp = post_route(app, &app.api_key, body).await;
            expect_error(resp, StatusCode::CONFLICT, "route_cycle").await;
        }
    };

    // Two channels.
    let ab = create_route(&app, &a, &b, "inbound").await;
    refuse(&b, &a, "any").await;
    refuse(&b, &a, "outbound").await;
    // Three channels, whatever the direction filters along the way.
    let bc = create_route(&app, &b, &c, "outbound").await;
    refuse(&c, &a, "inbound").await;
    refuse(&c, &b, "any").await;
    // Paths that meet again are no cycle.
    create_route(&app, &a, &c, "any").await;
    assert_eq!(route_ids(&app, "").await.len(), 3);

    // Deleting a route lets its edge be added again, and unblocks what it blocked.
    assert_eq!(
        delete_route(&app, s(&ab, "id")).await.status(),
        StatusCode::NO_CONTENT
    );
    create_route(&app, &a, &b, "any").await;
    assert_eq!(
        delete_route(&app, s(&bc, "id")).await.status(),
        StatusCode::NO_CONTENT
    );
    create_route(&app, &c, &b, "any").await;
    // Now c -> b and a -> b, a -> c: b -> a would close a -> c -> b -> a.
    refuse(&b, &a, "any").await;
    assert_eq!(route_ids(&app, "").await.len(), 3);
}

async fn routes_from_the_api_produce_delivery_rows(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ws = app.websocket_channel().await;
    let bot = webhook(&app).await;
    let route = create_route(&app, s(&ws, "id"), &bot, "inbound").await;
    let conv = app.create_conversation(s(&ws, "id"), Some("visitor")).await;
    let path = format!("/api/v1/conversations/{}/activities", s(&conv, "id"));
    let delivery_channels = |activity: Value| {
        let app = &app;
        async move {
            let list = expect_data(
                app.req(
                    Method::GET,
                    &format!("/api/v1/activities/{}/deliveries", s(&activity, "id")),
                )
                .send()
                .await
                .unwrap(),
                StatusCode::OK,
            )
            .await;
            list.as_array()
                .unwrap()
                .iter()
                .map(|d| s(d, "channel_id").to_owned())
                .collect::<Vec<_>>()
        }
    };
    let from_user = || async {
        expect_data(
            app.anon(Method::POST, &path)
                .header("x-channel-token", s(&ws, "token"))
                .json(&json!({"text": "help"}))
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await
    };

    // What the user writes on the source channel (inbound) reaches the target...
    let inbound = from_user().await;
    assert_eq!(inbound["direction"], "inbound");
    assert_eq!(delivery_channels(inbound).await, [bot.as_str()]);
    // ...what the application answers (outbound) does not pass the filter.
    let outbound = expect_data(
        app.post_activity(s(&conv, "id"), json!({"text": "answer"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(outbound["direction"], "outbound");
    assert!(delivery_channels(outbound).await.is_empty());

    // Once the route is gone, nothing is forwarded.
    assert_eq!(
        delete_route(&app, s(&route, "id")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert!(delivery_channels(from_user().await).await.is_empty());
}
