//! Operations endpoints and the OpenAPI document.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::common::{Backend, TestApp, both_backends, postgres_only};

both_backends!(
    health_ready_and_openapi,
    a_newer_schema_still_serves,
    the_spec_documents_every_status_the_probes_get,
);
postgres_only!(postgres_sessions_on_this_host_skip_tls_and_time_out_statements);

async fn postgres_sessions_on_this_host_skip_tls_and_time_out_statements(backend: Backend) {
    let app = TestApp::start(backend).await;
    let converger::store::Store::Postgres(pool, _) = &app.store else {
        unreachable!("a PostgreSQL test");
    };
    // The test server listens on 127.0.0.1 with TLS on; a URL without sslmode to this
    // host connects in plain text.
    let (ssl, timeout, idle): (Option<bool>, String, String) = sqlx::query_as(
        "SELECT (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), \
         current_setting('statement_timeout'), \
         current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(ssl, Some(false));
    assert_eq!(timeout, "30s");
    assert_eq!(idle, "5s");
}

async fn health_ready_and_openapi(backend: Backend) {
    let app = TestApp::start(backend).await;
    let health: Value = app
        .anon(Method::GET, "/health")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = app.anon(Method::GET, "/ready").send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let resp = app
        .anon(Method::GET, "/health")
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-123");

    let doc: Value = app
        .anon(Method::GET, "/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let expected: BTreeSet<String> = [
        "/api/v1/channels",
        "/api/v1/channels/{id}",
        "/api/v1/channels/{id}/secret",
        "/api/v1/channels/{id}/rotate_secret",
        "/api/v1/channels/{id}/health",
        "/api/v1/channels/{id}/pause",
        "/api/v1/channels/{id}/resume",
        "/api/v1/conversations",
        "/api/v1/conversations/{id}",
        "/api/v1/conversations/{id}/close",
        "/api/v1/conversations/{id}/reopen",
        "/api/v1/conversations/{id}/activities",
        "/api/v1/activities/{id}/deliveries",
        "/api/v1/deliveries",
        "/api/v1/deliveries/{id}/retry",
        "/api/v1/ops-events",
        "/api/v1/ops-webhook",
        "/api/v1/deliveries/{id}/attempts",
        "/api/v1/channels/{id}/deliveries/retry",
        "/api/v1/routes",
        "/api/v1/routes/{id}",
        "/api/v1/tokens",
        "/api/v1/tokens/refresh",
        "/api/v1/channels/{id}/inbound",
        "/admin/api/stats",
        "/admin/api/tenants",
        "/admin/api/tenants/{id}/status",
        "/admin/api/tenants/{id}/rotate_key",
        "/admin/api/channels",
        "/admin/api/channels/{id}/retry_failed",
        "/admin/api/deliveries/{id}/retry",
        "/admin/api/conversations/{id}/close",
        "/admin/api/conversations/{id}/reopen",
        "/admin/api/session",
        "/admin/api/routes",
        "/admin/api/routes/{id}",
        "/admin/api/conversations",
        "/admin/api/deliveries",
        "/admin/api/channels/{id}/status",
        "/admin/api/channels/{id}/rotate_secret",
        "/socket/websocket",
        "/socket/longpoll",
        "/health",
        "/ready",
        "/metrics",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(paths, expected);
    // Every operation documents its responses, and bodies reference real schemas.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Activity",
        "Conversation",
        "ChannelOut",
        "ErrorBody",
        "ActivityIn",
        "TokenOut",
        "Route",
        "RouteIn",
        "Delivery",
        "DeliveryAttempt",
        "ReplayIn",
        "ReplayOut",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    // The socket endpoints document their refusals.
    let socket = &doc["paths"]["/socket/websocket"]["get"]["responses"];
    assert!(
        socket["403"].is_object() && socket["400"].is_object(),
        "{socket}"
    );
    let longpoll = &doc["paths"]["/socket/longpoll"];
    for (method, statuses) in [
        ("get", ["200", "403", "410"]),
        ("post", ["200", "410", "413"]),
    ] {
        for status in statuses {
            assert!(
                longpoll[method]["responses"][status].is_object(),
                "{method} {status}"
            );
        }
    }
    for name in ["PollBody", "PollError"] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}"
            );
        }
    }
}

/// A database migrated by a newer release (a migration this binary does not know)
/// still opens and serves, so binaries can be rolled back and upgraded one node at a
/// time.
async fn a_newer_schema_still_serves(backend: Backend) {
    let app = TestApp::start(backend).await;
    let add = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
               VALUES (29991231000001, 'from a newer release', TRUE, $1, 0)";
    match &app.store {
        converger::store::Store::Sqlite { writer, .. } => sqlx::query(add)
            .bind(vec![0u8; 48])
            .execute(writer)
            .await
            .map(|_| ()),
        converger::store::Store::Postgres(pool, _) => sqlx::query(add)
            .bind(vec![0u8; 48])
            .execute(pool)
            .await
            .map(|_| ()),
    }
    .expect("record a newer migration");
    let mut config = converger::Config::new(app.database_url.clone());
    config.jwt_secret = Some(crate::common::JWT_SECRET.into());
    let store = converger::app::open_store(&config)
        .await
        .expect("a newer schema opens");
    store.ping().await.unwrap();
    store.close().await;
    let resp = app
        .req(Method::GET, "/api/v1/channels")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Every operation of the spec, probed the ways a client gets wrong (no credentials, a
/// malformed id, an unknown id, a body that is not JSON or of another media type, an
/// empty JSON object), must answer with a status its entry documents: a client
/// generated from the spec is never surprised by an error it could not know of.
async fn the_spec_documents_every_status_the_probes_get(backend: Backend) {
    let app = TestApp::start(backend).await;
    let doc: Value = app
        .anon(Method::GET, "/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let unknown = uuid::Uuid::now_v7().to_string();
    let mut undocumented = Vec::new();
    let mut probed = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if op.get("responses").is_none() {
                continue;
            }
            let documented: BTreeSet<&str> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let with_ids = |id: &str| path.replace("{id}", id);
            let has_body = op.get("requestBody").is_some();
            let mut probes: Vec<(&str, reqwest::RequestBuilder)> = vec![
                (
                    "no credentials",
                    app.anon(method.clone(), &with_ids(&unknown)),
                ),
                ("unknown id", app.req(method.clone(), &with_ids(&unknown))),
            ];
            if path.contains("{id}") {
                probes.push((
                    "malformed id",
                    app.req(method.clone(), &with_ids("not-a-uuid")),
                ));
            }
            // A query parameter of a number type given a word.
            let numeric_query = op["parameters"].as_array().into_iter().flatten().find(|p| {
                p["in"] == "query"
                    && matches!(p["schema"]["type"].as_str(), Some("integer" | "number"))
            });
            if let Some(param) = numeric_query {
                let name = param["name"].as_str().unwrap();
                probes.push((
                    "malformed query",
                    app.req(
                        method.clone(),
                        &format!("{}?{name}=many", with_ids(&unknown)),
                    ),
                ));
            }
            if has_body {
                probes.push((
                    "text body",
                    app.req(method.clone(), &with_ids(&unknown))
                        .header("content-type", "text/plain")
                        .body("hello"),
                ));
                probes.push((
                    "malformed JSON",
                    app.req(method.clone(), &with_ids(&unknown))
                        .header("content-type", "application/json")
                        .body("{"),
                ));
                probes.push((
                    "empty object",
                    app.req(method.clone(), &with_ids(&unknown))
                        .header("content-type", "application/json")
                        .body("{}"),
                ));
            }
            for (probe, request) in probes {
                probed += 1;
                let status = request.send().await.unwrap().status();
                assert_ne!(
                    status,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "{method} {path} ({probe})"
                );
                if !documented.contains(status.as_str()) {
                    undocumented.push(format!("{method} {path} ({probe}): {status}"));
                }
            }
        }
    }
    assert!(probed > 100, "only {probed} probes");
    assert!(
        undocumented.is_empty(),
        "answers the spec does not document:\n{}",
        undocumented.join("\n")
    );
}
